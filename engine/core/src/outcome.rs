//! How a request ended, when it did not end well: the kinds of error every part counts by.
//! Measurement and the HTTP client both depend on this module, and it on nothing.

/// Kinds of failure, counted separately. The order is the column order in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Connect,
    Dns,
    Tls,
    Timeout,
    Reset,
    Status,
    Check,
    /// A Python task raised.
    Exception,
    /// The server's answer broke HTTP: a malformed status line or headers, bad chunking, a
    /// body shorter than announced, headers too large.
    Protocol,
    /// This machine ran out of file descriptors (EMFILE/ENFILE): the generator's limit, not
    /// the server's.
    FdLimit,
    /// HTTP/2: the server's GOAWAY refused the request (a stream it will not process). One cut
    /// off when the connection then closes is a `Reset`.
    GoAway,
    /// HTTP/2: the server reset the request's stream (RST_STREAM).
    RstStream,
    /// A redirect that was not followed to its end: more hops than allowed (a loop), a
    /// `Location` that is not an HTTP URL, or a hop to a host this run may not send to.
    Redirect,
}

impl ErrorKind {
    /// The kinds counted in metrics, in column order.
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::Connect,
        ErrorKind::Dns,
        ErrorKind::Tls,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::Status,
        ErrorKind::Check,
        ErrorKind::Exception,
        ErrorKind::Protocol,
        ErrorKind::FdLimit,
        ErrorKind::GoAway,
        ErrorKind::RstStream,
        ErrorKind::Redirect,
    ];
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Dns => "dns",
            ErrorKind::Tls => "tls",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Status => "status",
            ErrorKind::Check => "check",
            ErrorKind::Exception => "exception",
            ErrorKind::Protocol => "protocol",
            ErrorKind::FdLimit => "fd_limit",
            ErrorKind::GoAway => "goaway",
            ErrorKind::RstStream => "rst_stream",
            ErrorKind::Redirect => "redirect",
        }
    }
}

/// A request that got no answer to keep: its kind, and what happened where the kind alone
/// does not say it (which redirect failed and why), for the run's failures table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub kind: ErrorKind,
    pub message: Option<String>,
}

impl Failed {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Failed {
            kind,
            message: Some(message.into()),
        }
    }
}

impl From<ErrorKind> for Failed {
    fn from(kind: ErrorKind) -> Self {
        Failed {
            kind,
            message: None,
        }
    }
}

/// The kind of an I/O error on a connection.
pub fn classify_io(e: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as K;
    // EMFILE, ENFILE: this machine's descriptor limit, not the server's doing.
    if matches!(e.raw_os_error(), Some(24) | Some(23)) {
        return ErrorKind::FdLimit;
    }
    match e.kind() {
        K::TimedOut => ErrorKind::Timeout,
        K::ConnectionRefused | K::AddrNotAvailable | K::HostUnreachable | K::NetworkUnreachable => {
            ErrorKind::Connect
        }
        K::InvalidData => ErrorKind::Protocol,
        _ => ErrorKind::Reset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_exhaustion_is_told_apart_from_the_server() {
        let emfile = std::io::Error::from_raw_os_error(24);
        assert_eq!(classify_io(&emfile), ErrorKind::FdLimit);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify_io(&refused), ErrorKind::Connect);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(classify_io(&reset), ErrorKind::Reset);
    }

    #[test]
    fn every_counted_kind_has_its_own_name() {
        let names: std::collections::HashSet<_> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), ErrorKind::ALL.len());
    }
}
