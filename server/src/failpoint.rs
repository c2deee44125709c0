//! Failpoints: faults the end-to-end tests inject into a debug build of the
//! server, to show that it stops whole instead of running half alive.
//!
//! `HADRON_FAILPOINTS` holds comma-separated `name=shard` pairs, for example
//! `shard-start-fail=1,shard-panic=0`. Release builds compile every
//! failpoint to `false`: the variable is not even read.
//!
//! | name | what the shard does |
//! |---|---|
//! | `shard-start-fail` | fails its start with an error |
//! | `shard-start-hang` | never finishes starting |
//! | `shard-panic` | panics once it has started |

/// The environment variable that names the failpoints to trigger.
pub const FAILPOINTS_ENV: &str = "HADRON_FAILPOINTS";

/// Whether failpoint `name` is set for `shard` (always `false` in release
/// builds).
pub fn armed(name: &str, shard: u16) -> bool {
    if !cfg!(debug_assertions) {
        return false;
    }
    let Ok(spec) = std::env::var(FAILPOINTS_ENV) else {
        return false;
    };
    spec.split(',').any(|pair| {
        pair.split_once('=')
            .is_some_and(|(n, s)| n.trim() == name && s.trim().parse() == Ok(shard))
    })
}
