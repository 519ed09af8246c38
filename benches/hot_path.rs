//! Criterion benches of the request hot path (placeholder replaced by the benchmark work).
fn main() {}
