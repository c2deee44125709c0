//! Scoped tokens end to end (filled in below).
