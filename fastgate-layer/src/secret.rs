//! A string that never prints itself.

use std::fmt;
use std::sync::Arc;

/// A secret string (an upstream key, an admin token). `Debug` and `Display` print a mask.
///
/// The value is reachable only through [`Secret::expose`], so every place that reads it is easy to find.
///
/// ```
/// use fastgate_layer::Secret;
/// let s = Secret::new("sk-real");
/// assert_eq!(format!("{s} {s:?}"), "****** ******");
/// assert_eq!(s.expose(), "sk-real");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The secret value. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("******")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("******")
    }
}
