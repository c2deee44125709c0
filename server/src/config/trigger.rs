//! Pipeline triggers: which event types start an execution.
//!
//! A pattern is a dot-separated list of segments matched against the event's
//! `type`, split the same way. A literal segment matches itself, `*` matches
//! exactly one segment, and `>` (allowed only as the last segment) matches one
//! or more remaining segments, as in NATS subjects: `service.>` matches
//! `service.created` and `service.a.b` but not `service`. An empty trigger
//! list matches every event. Matching does not allocate.

use super::error::{ConfigError, Problem};

/// The most trigger patterns one pipeline may have.
pub const TRIGGERS_MAX: usize = 64;
/// The longest trigger pattern, in bytes.
pub const TRIGGER_BYTES_MAX: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`.
    One,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    segments: Vec<Segment>,
    /// Ends in `>`: one or more further segments match.
    rest: bool,
}

impl Pattern {
    fn parse(pattern: &str) -> Result<Pattern, &'static str> {
        if pattern.is_empty() {
            return Err("a trigger must not be empty");
        }
        if pattern.len() > TRIGGER_BYTES_MAX {
            return Err("a trigger may be at most 255 bytes long");
        }
        if pattern.chars().any(char::is_whitespace) {
            return Err("a trigger must not contain whitespace");
        }
        let mut segments = Vec::new();
        let mut rest = false;
        let mut parts = pattern.split('.').peekable();
        while let Some(part) = parts.next() {
            match part {
                "" => return Err("empty segment; check for a leading, trailing or doubled '.'"),
                ">" if parts.peek().is_some() => {
                    return Err("'>' may only be the last segment");
                }
                ">" => rest = true,
                "*" => segments.push(Segment::One),
                _ if part.contains(['*', '>']) => {
                    return Err("'*' and '>' must be a whole segment, like `service.*`");
                }
                _ => segments.push(Segment::Literal(part.to_owned())),
            }
        }
        Ok(Pattern { segments, rest })
    }

    fn matches(&self, event_type: &str) -> bool {
        let mut parts = event_type.split('.');
        for segment in &self.segments {
            match (segment, parts.next()) {
                (_, None) => return false,
                (Segment::One, Some(_)) => {}
                (Segment::Literal(literal), Some(part)) => {
                    if literal != part {
                        return false;
                    }
                }
            }
        }
        // `>` needs at least one more segment; without it there must be none.
        parts.next().is_some() == self.rest
    }
}

/// A pipeline's compiled trigger patterns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TriggerSet {
    patterns: Vec<Pattern>,
}

impl TriggerSet {
    /// Compiles `patterns`; the error names the first bad one as
    /// `spec.triggers[i]`.
    pub fn new(patterns: &[String]) -> Result<TriggerSet, ConfigError> {
        match TriggerSet::check(patterns).into_iter().next() {
            Some(error) => Err(error),
            None => Ok(TriggerSet {
                patterns: patterns
                    .iter()
                    .filter_map(|p| Pattern::parse(p).ok())
                    .collect(),
            }),
        }
    }

    /// Every problem with `patterns`, in order; empty when they are valid.
    pub fn check(patterns: &[String]) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if patterns.len() > TRIGGERS_MAX {
            errors.push(ConfigError::new(
                "spec.triggers",
                Problem::TooManyTriggers {
                    count: patterns.len(),
                    max: TRIGGERS_MAX,
                },
            ));
        }
        for (i, pattern) in patterns.iter().enumerate() {
            if let Err(reason) = Pattern::parse(pattern) {
                errors.push(ConfigError::new(
                    format!("spec.triggers[{i}]"),
                    Problem::InvalidTrigger {
                        pattern: pattern.clone(),
                        reason,
                    },
                ));
            }
        }
        errors
    }

    /// Whether an event of this `type` starts an execution.
    pub fn matches(&self, event_type: &str) -> bool {
        self.patterns.is_empty() || self.patterns.iter().any(|p| p.matches(event_type))
    }

    /// Whether every event matches (the trigger list was empty).
    pub fn matches_all(&self) -> bool {
        self.patterns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(patterns: &[&str]) -> TriggerSet {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        TriggerSet::new(&patterns).unwrap()
    }

    #[test]
    fn matching_table() {
        let table: &[(&[&str], &str, bool)] = &[
            (&["service.created"], "service.created", true),
            (&["service.created"], "service.deleted", false),
            (&["service.created"], "service", false),
            (&["service.created"], "service.created.v2", false),
            (&["service.created"], "Service.created", false),
            (&["service.*"], "service.created", true),
            (&["service.*"], "service", false),
            (&["service.*"], "service.a.b", false),
            (&["*.created"], "service.created", true),
            (&["*.created"], "user.created", true),
            (&["*.created"], "created", false),
            (&["*"], "anything", true),
            (&["*"], "a.b", false),
            (&["service.>"], "service.created", true),
            (&["service.>"], "service.a.b.c", true),
            (&["service.>"], "service", false),
            (&["service.>"], "services.created", false),
            (&[">"], "a", true),
            (&[">"], "a.b.c", true),
            (&["*.*.>"], "a.b", false),
            (&["*.*.>"], "a.b.c", true),
            (&["a.*.c"], "a.b.c", true),
            (&["a.*.c"], "a.b.d", false),
            (&["billing.paid", "service.*"], "billing.paid", true),
            (&["billing.paid", "service.*"], "service.x", true),
            (&["billing.paid", "service.*"], "billing.due", false),
            (&[], "whatever.at.all", true),
            (&[], "", true),
        ];
        for (patterns, event_type, expected) in table {
            assert_eq!(
                set(patterns).matches(event_type),
                *expected,
                "{patterns:?} vs {event_type:?}"
            );
        }
    }

    #[test]
    fn empty_list_matches_all() {
        assert!(set(&[]).matches_all());
        assert!(!set(&["a"]).matches_all());
    }

    #[test]
    fn invalid_patterns_are_rejected_with_their_index() {
        let table: &[(&str, &str)] = &[
            ("", "empty"),
            ("a..b", "empty segment"),
            (".a", "empty segment"),
            ("a.", "empty segment"),
            ("a.>.b", "'>' may only be the last segment"),
            (">.a", "'>' may only be the last segment"),
            ("a.b*", "whole segment"),
            ("a.>b", "whole segment"),
            ("a b", "whitespace"),
        ];
        for (pattern, reason) in table {
            let patterns = vec!["ok.pattern".to_string(), pattern.to_string()];
            let error = TriggerSet::new(&patterns).unwrap_err();
            assert_eq!(error.path, "spec.triggers[1]", "{pattern:?}");
            let message = error.to_string();
            assert!(message.contains(reason), "{pattern:?}: {message}");
        }
        let long = vec!["a".repeat(TRIGGER_BYTES_MAX + 1)];
        assert!(TriggerSet::new(&long).is_err());
        let many: Vec<String> = (0..=TRIGGERS_MAX).map(|i| format!("t{i}")).collect();
        assert_eq!(TriggerSet::new(&many).unwrap_err().path, "spec.triggers");
    }
}
