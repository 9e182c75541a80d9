//! The namespace test bench.
