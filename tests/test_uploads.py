"""File uploads (multipart forms) on both paths: read back by an independent parser
(werkzeug's), files sent from disk, and a file that is not there refused before anything is
sent."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from werkzeug.formparser import parse_form_data

import loadpilot as lp
from loadpilot.scenarios.loader import load_scenario

UPLOADS = """
from pathlib import Path

import loadpilot as lp

BIG = Path({big!r})

@lp.scenario(profile=lp.constant(rps=20, duration="1s"))
class Uploads(lp.VUser):
    @lp.task
    def engine_upload(self):
        self.client.post("/engine", data={{"note": "vu {{{{__vu}}}}", "kind": "a&b c"}},
                         files={{"doc": ("a \\"b\\".txt", "hello {{{{__iter}}}}", "text/plain"),
                                "big": Path({big!r})}})

    @lp.task
    def python_upload(self):
        with open(BIG, "rb") as f:
            self.client.post("/python", data={{"note": "py", "kind": "a&b c"}},
                             files={{"doc": ("a \\"b\\".txt", b"hello py", "text/plain"),
                                    "big": f}})
"""


def _parse(content_type: str | None, body: bytes) -> tuple[dict[str, str], dict[str, Any]]:
    environ = {
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    _, form, files = parse_form_data(environ, max_content_length=None)
    got = {k: (f.filename, f.content_type, f.read()) for k, f in files.items()}
    return dict(form), got


def test_files_are_sent_as_a_multipart_form_on_both_paths(
    tmp_path: Path, out: Path, recorder: Any
) -> None:
    big = tmp_path / "big.bin"
    data = bytes(range(256)) * 12_000  # 3 MB: more than one chunk, more than one window
    big.write_bytes(data)
    f = tmp_path / "uploads.py"
    f.write_text(textwrap.dedent(UPLOADS.format(big=str(big))))
    sc = load_scenario(f, None)
    assert sc.paths == {"engine_upload": "engine", "python_upload": "python"}
    s = lp.run(sc, out, target=recorder.url).summary()
    assert s.overall.errors == 0 and s.overall.requests == 20
    assert len(recorder.bodies) == 20
    for path, content_type, body in recorder.bodies:
        assert content_type is not None and content_type.startswith("multipart/form-data; ")
        form, files = _parse(content_type, body)
        assert form["kind"] == "a&b c"
        assert form["note"] == "py" if path == "/python" else form["note"].startswith("vu ")
        name, doc_type, doc = files["doc"]
        assert (name, doc_type) == ('a "b".txt', "text/plain")
        assert doc == b"hello py" if path == "/python" else doc.startswith(b"hello ")
        # The file from disk arrives whole, named after it, its type guessed from its name.
        assert files["big"] == ("big.bin", "application/octet-stream", data), path
    # The engine's templates were filled per request.
    docs = {_parse(ct, b)[1]["doc"][2] for p, ct, b in recorder.bodies if p == "/engine"}
    assert len(docs) > 1, [p for p, _, _ in recorder.bodies]


@pytest.mark.parametrize("before", ["", "x = 1\n" + " " * 20])  # engine path, Python path
def test_a_file_that_is_not_there_is_refused_before_anything_is_sent(
    tmp_path: Path, before: str
) -> None:
    f = tmp_path / "missing.py"
    f.write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path

            import loadpilot as lp

            @lp.scenario(profile=lp.constant(rps=5, duration="1s"))
            class Missing(lp.VUser):
                @lp.task
                def t(self):
                    {before}self.client.post("/", files={{"f": ("a.csv", Path("no-such.csv"))}})
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "loadpilot.cli", "run", str(f), "--target", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    line = 10 + before.count("\n")
    assert f"{f}:{line}: files['f']: no file 'no-such.csv'" in done.stderr, done.stderr


def test_a_plan_names_the_file_it_cannot_read(tmp_path: Path) -> None:
    plan = lp.Plan(
        target="http://127.0.0.1:9",
        load=lp.OpenLoad(stages=[lp.Constant(rate=1, duration_s=1)]),
        tasks=[
            lp.Task(
                name="t",
                requests=[
                    lp.Request(
                        method="POST",
                        path="/",
                        files=[{"field": "f", "path": str(tmp_path / "gone.csv")}],
                    )
                ],
            )
        ],
    )
    with pytest.raises(lp.PlanError, match=r"tasks\[0\]\.requests\[0\]\.files\[0\]\.path"):
        lp.run(plan, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
