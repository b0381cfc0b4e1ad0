//! ASID allocation.
