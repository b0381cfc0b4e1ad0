//! Device-tree discovery into a typed platform description.
