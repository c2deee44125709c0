//! Helpers for the end-to-end tests in `tests/tests/`, which start the real
//! `hadron` binary. They arrive with the server (issue 3).
