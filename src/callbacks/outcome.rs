//! What an attempt's answer means for a call back.

/// What to do after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Worth another attempt: the receiver was away, slow or busy.
    Retry,
    /// The receiver refused it and would again: recorded, the operator told.
    GiveUp,
}

/// An attempt's outcome: the HTTP status, or `None` when no answer came
/// (refused, timed out, TLS failed). A 2xx is delivered; a 408, a 429, a
/// 5xx and no answer are tried again; any other status (a 3xx is not
/// followed: the body would be resent elsewhere) is given up.
pub fn verdict(http_status: Option<u16>) -> Verdict {
    match http_status {
        Some(200..=299) => Verdict::Delivered,
        None | Some(408) | Some(429) | Some(500..) => Verdict::Retry,
        Some(_) => Verdict::GiveUp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lasting_refusal_is_given_up() {
        for status in [200, 201, 204, 299] {
            assert_eq!(verdict(Some(status)), Verdict::Delivered, "{status}");
        }
        for status in [None, Some(408), Some(429), Some(500), Some(503), Some(599)] {
            assert_eq!(verdict(status), Verdict::Retry, "{status:?}");
        }
        for status in [100, 301, 307, 400, 401, 403, 404, 410, 422] {
            assert_eq!(verdict(Some(status)), Verdict::GiveUp, "{status}");
        }
    }
}
