//! Stage-1 translation tables (Arm ARM D8).
