//! Configuration (component.toml).
