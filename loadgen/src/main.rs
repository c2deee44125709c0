//! `loadgen`: the macro benchmark. Scenarios arrive with the performance work
//! (issue 5), once the server speaks the protocol.

fn main() {
    println!("loadgen {}: no scenarios yet", env!("CARGO_PKG_VERSION"));
}
