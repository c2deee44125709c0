//! Naming rules for streams, pipelines and stages.
//!
//! Stream and pipeline names become directory names under the data dir and
//! appear on the wire, so they are kept to a small, portable alphabet that can
//! never spell `.`, `..` or a path separator: lowercase ASCII letters, digits,
//! `-` and `.`, starting and ending with a letter or digit, at most
//! [`NAME_BYTES_MAX`] bytes. Stage names are RFC-1123 labels: the same without
//! `.`.

/// The longest resource or stage name, in bytes (an RFC-1123 label's limit).
pub const NAME_BYTES_MAX: usize = 63;

/// Checks a stream or pipeline name (`metadata.name`, `sourceStream`).
pub fn check_resource_name(name: &str) -> Result<(), &'static str> {
    check(name, true)
}

/// Checks a stage name: an RFC-1123 label.
pub fn check_stage_name(name: &str) -> Result<(), &'static str> {
    check(name, false)
}

fn check(name: &str, dots: bool) -> Result<(), &'static str> {
    let bytes = name.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return Err("a name must not be empty");
    };
    if bytes.len() > NAME_BYTES_MAX {
        return Err("a name may be at most 63 characters long");
    }
    let allowed =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.');
    if !bytes.iter().all(|&b| allowed(b)) {
        return Err(if dots {
            "use only lowercase letters, digits, '-' and '.'"
        } else {
            "use only lowercase letters, digits and '-'"
        });
    }
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return Err("a name must start and end with a lowercase letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names() {
        for ok in [
            "events",
            "a",
            "service-creation",
            "orders.v2",
            "0",
            &"a".repeat(63),
        ] {
            assert_eq!(check_resource_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-a",
            "a-",
            "a.",
            "Events",
            "a_b",
            "a/b",
            "a b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(check_resource_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stage_names_are_rfc1123_labels() {
        for ok in ["deploy-service", "sync", "a1", "1a"] {
            assert_eq!(check_stage_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a.b", "Deploy", "-x", "x-", "a_b", &"x".repeat(64)] {
            assert!(check_stage_name(bad).is_err(), "{bad:?}");
        }
    }
}
