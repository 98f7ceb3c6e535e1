//! Criterion benchmarks of the layer stack (written in a following commit).

fn main() {}
