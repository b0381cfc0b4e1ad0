//! Boot arguments (`/chosen/bootargs`, set with QEMU's `-append`): `key=value` or bare `key`
//! words separated by spaces.
//!
//! Recognised keys: `log=<level>`, `ktest[=<filter>]` (run the on-target tests whose name
//! contains the filter instead of the main job), `secondary_tlb=sync|legacy|off`,
//! `smmu.strtab=linear|2level`, `smmu.trace_marks` (mark flushes under test in QEMU's SMMU
//! trace for the host's trace oracle), `edu.completion=irq|poll`. Unknown keys are reported,
//! not ignored silently.

/// A parsed view of the boot arguments (borrowing the device tree's string).
#[derive(Clone, Copy, Debug)]
pub struct BootArgs<'a> {
    raw: &'a str,
}

/// Keys the kernel understands.
pub const KNOWN_KEYS: &[&str] = &[
    "log",
    "ktest",
    "secondary_tlb",
    "smmu.strtab",
    "edu.completion",
];

impl<'a> BootArgs<'a> {
    /// Wrap a raw bootargs string.
    pub fn new(raw: &'a str) -> Self {
        Self { raw }
    }

    /// The raw string.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// All `(key, value)` pairs; a bare word has the value `None`.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> + 'a {
        self.raw
            .split_ascii_whitespace()
            .map(|word| match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            })
    }

    /// The value of the last occurrence of `key` (`Some(None)` for a bare word).
    pub fn get(&self, key: &str) -> Option<Option<&'a str>> {
        self.iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .last()
    }

    /// Whether `key` is present.
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Keys present that the kernel does not know.
    pub fn unknown_keys(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.iter()
            .map(|(k, _)| k)
            .filter(|k| !KNOWN_KEYS.contains(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values_bare_words_and_last_wins() {
        let args = BootArgs::new("log=debug ktest  secondary_tlb=legacy log=info bogus");
        assert_eq!(args.get("log"), Some(Some("info")));
        assert_eq!(args.get("ktest"), Some(None));
        assert_eq!(args.get("secondary_tlb"), Some(Some("legacy")));
        assert_eq!(args.get("smmu.strtab"), None);
        assert!(args.has("ktest"));
        assert_eq!(args.unknown_keys().collect::<Vec<_>>(), vec!["bogus"]);
    }

    #[test]
    fn empty_filter_is_present_and_empty() {
        assert_eq!(BootArgs::new("ktest=").get("ktest"), Some(Some("")));
        assert_eq!(BootArgs::new("").iter().count(), 0);
    }
}
