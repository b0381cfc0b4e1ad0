//! Host harness for the on-target test suites.
