//! The syntax of a `Template` output (`spec.target.outputs[].template`):
//! parsed here, where the spec is checked, and rendered by the output layer.

use super::{Output, OutputFormat};

/// The placeholders of a `Template`, and nothing else (no functions).
const PLACEHOLDERS: [&str; 3] = ["token", "url", "expiresAt"];

/// One piece of a parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Literal text.
    Text(&'a str),
    /// `${token}`.
    Token,
    /// `${url}`.
    Url,
    /// `${expiresAt}`.
    ExpiresAt,
}

/// Parses a template: `${token}`, `${url}`, `${expiresAt}` are replaced,
/// `$${` is a literal `${`, any other `$` is itself.
///
/// # Errors
///
/// A message naming the unknown or unclosed placeholder, or saying that the
/// template is empty.
pub fn parse(template: &str) -> Result<Vec<Piece<'_>>, String> {
    if template.is_empty() {
        return Err("the template is empty".to_owned());
    }
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        let (text, from_dollar) = rest.split_at(at);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        if let Some(after) = from_dollar.strip_prefix("$${") {
            pieces.push(Piece::Text("${"));
            rest = after;
        } else if let Some(after) = from_dollar.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err(format!(
                    "a placeholder is not closed: {:?} (write $${{ for a literal ${{)",
                    truncate(from_dollar)
                ));
            };
            pieces.push(match &after[..end] {
                "token" => Piece::Token,
                "url" => Piece::Url,
                "expiresAt" => Piece::ExpiresAt,
                other => {
                    return Err(format!(
                        "unknown placeholder ${{{}}}; the placeholders are {} (write $${{ for a literal ${{)",
                        truncate(other),
                        PLACEHOLDERS.map(|p| format!("${{{p}}}")).join(", ")
                    ));
                }
            });
            rest = &after[end + 1..];
        } else {
            pieces.push(Piece::Text("$"));
            rest = &from_dollar[1..];
        }
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

/// At most 40 characters of user text in a message.
fn truncate(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Checks one output as the spec gives it: a template for `Template` only,
/// and one that parses.
///
/// # Errors
///
/// A message for `InvalidSpec` on `spec.target.outputs`.
pub fn check(output: &Output) -> Result<(), String> {
    match (output.format, output.template.as_deref()) {
        (OutputFormat::Template, Some(template)) => parse(template)
            .map(drop)
            .map_err(|m| format!("output {:?}: {m}", output.key)),
        (OutputFormat::Template, None) => Err(format!(
            "output {:?}: format Template needs a template",
            output.key
        )),
        (_, Some(_)) => Err(format!(
            "output {:?}: a template is only read with format Template",
            output.key
        )),
        (OutputFormat::BearerHeader | OutputFormat::EnvFile | OutputFormat::Json, None) => Ok(()),
    }
}
