//! Overlay DNS (being written).
