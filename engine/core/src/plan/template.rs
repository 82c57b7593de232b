//! Request templates: `{{name}}` placeholders filled per iteration.
//!
//! Names are resolved once, when the plan is compiled, to where their value comes from (a feeder
//! column, a per-user value, a plan-wide value or a built-in), so filling is a walk over pieces
//! with no lookups by string. An unknown name is a plan error naming the field.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Where a placeholder's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// `{{__vu}}`: the virtual user (or connection) number.
    Vu,
    /// `{{__iter}}`: the global iteration index.
    Iter,
    FeederColumn(usize),
    UserVar(String),
    Const(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Lit(String),
    Var(Source),
}

/// The names a template may use, and where each comes from.
#[derive(Debug, Default, Clone)]
pub struct Scope {
    names: BTreeMap<String, Source>,
}

impl Scope {
    pub fn new(
        feeder_columns: &[String],
        user_var_names: &[String],
        vars: &BTreeMap<String, String>,
    ) -> Self {
        let mut names = BTreeMap::new();
        for (k, v) in vars {
            names.insert(k.clone(), Source::Const(v.clone()));
        }
        for k in user_var_names {
            names.insert(k.clone(), Source::UserVar(k.clone()));
        }
        for (i, c) in feeder_columns.iter().enumerate() {
            names.insert(c.clone(), Source::FeederColumn(i));
        }
        names.insert("__vu".into(), Source::Vu);
        names.insert("__iter".into(), Source::Iter);
        Scope { names }
    }
}

/// What a placeholder is filled from in one iteration.
pub struct Values<'a> {
    pub vu: u64,
    pub iter: u64,
    pub row: Option<&'a [String]>,
    pub user: Option<&'a BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `text`; `at` names the field for errors (e.g. `tasks[0].requests[1].path`).
    pub fn compile(text: &str, scope: &Scope, at: &str) -> Result<Self> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Lit(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| Error::plan(at, format!("unclosed '{{{{' in {text:?}")))?;
            let name = after[..close].trim();
            let source = scope.names.get(name).cloned().ok_or_else(|| {
                let known: Vec<&str> = scope.names.keys().map(String::as_str).collect();
                Error::plan(
                    at,
                    format!(
                        "unknown variable {{{{{name}}}}}; known: {}",
                        known.join(", ")
                    ),
                )
            })?;
            pieces.push(Piece::Var(source));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Lit(rest.to_string()));
        }
        Ok(Template { pieces })
    }

    /// A template with no placeholders renders the same every time and can be built once.
    pub fn as_constant(&self) -> Option<String> {
        match self.pieces.as_slice() {
            [] => Some(String::new()),
            [Piece::Lit(s)] => Some(s.clone()),
            _ => None,
        }
    }

    pub fn render_into(&self, v: &Values<'_>, out: &mut String) {
        use std::fmt::Write;
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Var(Source::Vu) => write!(out, "{}", v.vu).unwrap(),
                Piece::Var(Source::Iter) => write!(out, "{}", v.iter).unwrap(),
                Piece::Var(Source::FeederColumn(i)) => {
                    if let Some(row) = v.row {
                        out.push_str(&row[*i]);
                    }
                }
                Piece::Var(Source::UserVar(k)) => {
                    if let Some(val) = v.user.and_then(|u| u.get(k)) {
                        out.push_str(val);
                    }
                }
                Piece::Var(Source::Const(s)) => out.push_str(s),
            }
        }
    }

    pub fn render(&self, v: &Values<'_>) -> String {
        let mut s = String::new();
        self.render_into(v, &mut s);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        let mut vars = BTreeMap::new();
        vars.insert("host".to_string(), "shop".to_string());
        Scope::new(&["user".into(), "id".into()], &["token".into()], &vars)
    }

    #[test]
    fn fills_every_kind_of_placeholder() {
        let t = Template::compile(
            "/u/{{user}}/{{ id }}?h={{host}}&vu={{__vu}}&i={{__iter}}&t={{token}}",
            &scope(),
            "path",
        )
        .unwrap();
        let row = vec!["ann".to_string(), "42".to_string()];
        let mut user = BTreeMap::new();
        user.insert("token".to_string(), "abc".to_string());
        let s = t.render(&Values {
            vu: 3,
            iter: 9,
            row: Some(&row),
            user: Some(&user),
        });
        assert_eq!(s, "/u/ann/42?h=shop&vu=3&i=9&t=abc");
    }

    #[test]
    fn plain_text_is_a_constant() {
        let t = Template::compile("/items", &scope(), "path").unwrap();
        assert_eq!(t.as_constant().as_deref(), Some("/items"));
        let t = Template::compile("/items/{{id}}", &scope(), "path").unwrap();
        assert_eq!(t.as_constant(), None);
    }

    #[test]
    fn unknown_and_unclosed_placeholders_are_errors_with_their_field() {
        let e = Template::compile("/x/{{nope}}", &scope(), "tasks[0].requests[0].path")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tasks[0].requests[0].path") && e.contains("nope"),
            "{e}"
        );
        let e = Template::compile("/x/{{id", &scope(), "p")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unclosed"), "{e}");
    }
}
