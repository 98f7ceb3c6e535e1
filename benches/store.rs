//! Store benchmarks (see fastgate-store).
fn main() {}
