//! File names that come from the network become one safe path component, or are refused.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Longest accepted name, in bytes (the common file-system limit for one component).
pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("file name is empty")]
    Empty,
    #[error("file name is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    #[error("file name {0:?} is a relative directory reference")]
    DotName(String),
    #[error("file name contains a path separator")]
    Separator,
    #[error("file name contains a NUL or control character")]
    Control,
    /// Bidi overrides, zero-width and other invisible format characters (Unicode category
    /// Cf) make a name display as something it is not (`evil\u{202e}txt.exe` shows as
    /// `evilexe.txt`).
    #[error("file name contains an invisible format character (bidi control, zero-width, …): {0}")]
    Format(String),
    #[error("file name has leading or trailing whitespace")]
    Whitespace,
}

/// Checks that `name` is a single, harmless path component and returns it unchanged.
///
/// Refused rather than rewritten: a manifest whose name needs fixing was made by something we do
/// not understand, and silently renaming would break the file id the name is part of.
pub fn sanitize_name(name: &str) -> Result<&str, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if name == "." || name == ".." {
        return Err(NameError::DotName(name.to_string()));
    }
    if name.contains(['/', '\\']) {
        return Err(NameError::Separator);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control);
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.general_category() == GeneralCategory::Format)
    {
        return Err(NameError::Format(format!("U+{:04X}", u32::from(c))));
    }
    if name.trim() != name {
        return Err(NameError::Whitespace);
    }
    // Windows drive prefixes ("C:") and alternate streams would escape on that platform.
    if name.contains(':') && cfg!(windows) {
        return Err(NameError::Separator);
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in [
            "a",
            "dataset.tar.zst",
            "ü-名前.iso",
            "..hidden",
            "a..b",
            ".bashrc",
        ] {
            assert_eq!(sanitize_name(ok), Ok(ok));
        }
    }

    #[test]
    fn refuses_escapes() {
        assert_eq!(sanitize_name(""), Err(NameError::Empty));
        assert_eq!(sanitize_name(".."), Err(NameError::DotName("..".into())));
        assert_eq!(sanitize_name("."), Err(NameError::DotName(".".into())));
        assert_eq!(sanitize_name("../../etc/passwd"), Err(NameError::Separator));
        assert_eq!(sanitize_name("a/b"), Err(NameError::Separator));
        assert_eq!(sanitize_name("a\\b"), Err(NameError::Separator));
        assert_eq!(sanitize_name("/etc"), Err(NameError::Separator));
        assert_eq!(sanitize_name("a\0b"), Err(NameError::Control));
        assert_eq!(sanitize_name("a\nb"), Err(NameError::Control));
        assert_eq!(sanitize_name(" a"), Err(NameError::Whitespace));
        assert_eq!(sanitize_name(&"x".repeat(256)), Err(NameError::TooLong));
        assert!(sanitize_name(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn refuses_names_that_display_as_something_else() {
        for (bad, code) in [
            ("evil\u{202e}txt.exe", "U+202E"), // right-to-left override
            ("a\u{2066}b", "U+2066"),          // left-to-right isolate
            ("zero\u{200b}width", "U+200B"),   // zero-width space
            ("join\u{200d}er", "U+200D"),      // zero-width joiner
            ("\u{feff}bom", "U+FEFF"),         // byte-order mark
            ("soft\u{ad}hyphen", "U+00AD"),    // soft hyphen
            ("tag\u{e0041}", "U+E0041"),       // tag character
        ] {
            assert_eq!(
                sanitize_name(bad),
                Err(NameError::Format(code.into())),
                "{bad:?}"
            );
        }
        // Visible non-ASCII stays welcome.
        assert!(sanitize_name("مرحبا-שלום-名前.txt").is_ok());
    }
}
