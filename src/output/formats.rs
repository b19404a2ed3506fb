//! The extra keys of `spec.target.outputs`: the same token in the shape each
//! consumer reads (an `Authorization` header value, an env file, a JSON
//! document, a template). Pure: rendering and validation only.

use jiff::Timestamp;

use crate::api::{
    Output, OutputFormat,
    template::{Piece, parse},
};

use super::secret::rfc3339;

/// The characters a token may hold to be written into an `EnvFile` output:
/// the JWT alphabet (base64url, and `.`), with `~ + / =` for other token
/// forms. Anything else (`$`, a backtick, a quote, a space, `;`) a shell
/// that sources the file would interpret.
pub const ENV_FILE_TOKEN_CHARACTERS: &str = "A-Z a-z 0-9 - _ . ~ + / =";

fn env_file_safe(token: &str) -> bool {
    token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.~+/=".contains(&b))
}

/// Whether `token` may be written with these outputs: never into an
/// `EnvFile` output when it holds a character outside
/// [`ENV_FILE_TOKEN_CHARACTERS`].
///
/// # Errors
///
/// A message naming the first such output, for a failed refresh.
pub fn check_token(outputs: &[Output], token: &str) -> Result<(), String> {
    match outputs
        .iter()
        .find(|o| o.format == OutputFormat::EnvFile && !env_file_safe(token))
    {
        Some(output) => Err(format!(
            "the token holds characters a shell would interpret (only {ENV_FILE_TOKEN_CHARACTERS}), so it is not written: output {:?} is an EnvFile",
            output.key
        )),
        None => Ok(()),
    }
}

/// The value of one output key for `token` obtained from `url` (`spec.url`
/// as written), which expires at `expires_at` (RFC 3339 in UTC, whole
/// seconds; unknown is the empty string, `null` in `Json`).
///
/// An output that [`check`] refuses renders as the empty string; the
/// controller never writes one (the spec is checked before any request).
pub fn render(output: &Output, token: &str, url: &str, expires_at: Option<Timestamp>) -> String {
    let expires = expires_at.map(rfc3339);
    match output.format {
        OutputFormat::BearerHeader => format!("Bearer {token}"),
        OutputFormat::EnvFile => format!(
            "RUNAI_URL={url}\nRUNAI_TOKEN={token}\nRUNAI_TOKEN_EXPIRES_AT={}\n",
            expires.as_deref().unwrap_or_default()
        ),
        OutputFormat::Json => {
            // Keys in the documented order; serde_json escapes the strings.
            let text = |s: &str| serde_json::Value::from(s).to_string();
            format!(
                "{{\"url\":{},\"accessToken\":{},\"expiresAt\":{}}}",
                text(url),
                text(token),
                expires.as_deref().map_or_else(|| "null".to_owned(), text)
            )
        }
        OutputFormat::Template => output
            .template
            .as_deref()
            .and_then(|t| parse(t).ok())
            .map(|pieces| {
                pieces
                    .into_iter()
                    .map(|piece| match piece {
                        Piece::Text(text) => text,
                        Piece::Token => token,
                        Piece::Url => url,
                        Piece::ExpiresAt => expires.as_deref().unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::template::check;

    fn output(format: OutputFormat, template: Option<&str>) -> Output {
        Output {
            key: "out".into(),
            format,
            template: template.map(str::to_owned),
        }
    }

    fn at() -> Option<Timestamp> {
        Some("2026-11-30T05:00:00.75Z".parse().unwrap())
    }

    const URL: &str = "https://acme.run.ai/";

    #[test]
    fn each_format_renders_exactly() {
        let cases = [
            (OutputFormat::BearerHeader, None, "Bearer tok"),
            (
                OutputFormat::EnvFile,
                None,
                "RUNAI_URL=https://acme.run.ai/\nRUNAI_TOKEN=tok\nRUNAI_TOKEN_EXPIRES_AT=2026-11-30T05:00:00Z\n",
            ),
            (
                OutputFormat::Json,
                None,
                r#"{"url":"https://acme.run.ai/","accessToken":"tok","expiresAt":"2026-11-30T05:00:00Z"}"#,
            ),
            (
                OutputFormat::Template,
                Some("token=${token} url=${url} expires=${expiresAt}"),
                "token=tok url=https://acme.run.ai/ expires=2026-11-30T05:00:00Z",
            ),
        ];
        for (format, template, want) in cases {
            let o = output(format, template);
            assert_eq!(check(&o), Ok(()));
            assert_eq!(render(&o, "tok", URL, at()), want, "{format:?}");
        }
    }

    #[test]
    fn an_unknown_expiry_is_empty_or_null() {
        let render_ = |format, template| render(&output(format, template), "tok", URL, None);
        assert_eq!(
            render_(OutputFormat::EnvFile, None),
            "RUNAI_URL=https://acme.run.ai/\nRUNAI_TOKEN=tok\nRUNAI_TOKEN_EXPIRES_AT=\n"
        );
        assert_eq!(
            render_(OutputFormat::Json, None),
            r#"{"url":"https://acme.run.ai/","accessToken":"tok","expiresAt":null}"#
        );
        assert_eq!(
            render_(OutputFormat::Template, Some("[${expiresAt}]")),
            "[]"
        );
    }

    #[test]
    fn dollars_are_literal_except_placeholders() {
        let o = output(
            OutputFormat::Template,
            Some("$${token} costs $5 $ ${token}$ ${url}$"),
        );
        assert_eq!(check(&o), Ok(()));
        assert_eq!(
            render(&o, "tok", URL, None),
            "${token} costs $5 $ tok$ https://acme.run.ai/$"
        );
        // Read from the left: in `$$${`, the first `$` is itself and `$${`
        // the escape.
        let o = output(OutputFormat::Template, Some("$$${url}"));
        assert_eq!(render(&o, "tok", URL, None), "$${url}");
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        for (template, says) in [
            ("${token} ${TOKEN}", "unknown placeholder ${TOKEN}"),
            ("${secret}", "unknown placeholder ${secret}"),
            ("${token", "not closed"),
            ("", "empty"),
            (
                "{{ .token }} ${upper(token)}",
                "unknown placeholder ${upper(token)}",
            ),
        ] {
            let err = check(&output(OutputFormat::Template, Some(template))).unwrap_err();
            assert!(err.contains(says), "{template:?}: {err}");
        }
        assert!(
            check(&output(OutputFormat::Template, None))
                .unwrap_err()
                .contains("needs a template")
        );
        assert!(
            check(&output(OutputFormat::Json, Some("${token}")))
                .unwrap_err()
                .contains("only read with format Template")
        );
    }

    #[test]
    fn a_token_a_shell_would_interpret_never_goes_into_an_env_file() {
        let env = output(OutputFormat::EnvFile, None);
        let json = output(OutputFormat::Json, None);
        for bad in ["a$(id)b", "a`id`", "a'b", "a b", "a;b", "a\\b", "a\"b"] {
            let err = check_token(std::slice::from_ref(&env), bad).unwrap_err();
            assert!(err.contains(&format!("{:?}", env.key)), "{err}");
            // Other formats quote or hold it as it is.
            assert!(
                check_token(std::slice::from_ref(&json), bad).is_ok(),
                "{bad}"
            );
        }
        // Positive control: a JWT and the other token forms pass.
        for good in ["eyJhbGciOi.eyJzdWIi.sig-_", "abc~+/=="] {
            assert!(
                check_token(std::slice::from_ref(&env), good).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn json_escapes_what_it_must() {
        let o = output(OutputFormat::Json, None);
        let text = render(&o, "a\"b", "https://h/\\", None);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["accessToken"], "a\"b");
        assert_eq!(parsed["url"], "https://h/\\");
    }
}
