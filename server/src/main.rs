//! The `hadron` binary. The server and the CLI arrive with the streams work
//! (issue 3); for now it reports what it is and exits.

fn main() {
    println!(
        "hadron {}: the server lands with the streams work; see README.md",
        env!("CARGO_PKG_VERSION")
    );
}
