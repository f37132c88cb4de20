//! `${VAR}` interpolation inside the string values of a parsed TOML document.
//!
//! Interpolation runs on parsed values, not on the raw text, so a secret that
//! contains quotes or newlines cannot change the structure of the file, and
//! every undefined variable is reported with the field it was used in.

use crate::error::Problems;

/// Where variable values come from. The process environment in production;
/// a map in tests, which must not mutate the shared process environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// Replaces `${NAME}` and `${NAME:-fallback}` in every string of `value`;
/// `$${` stands for a literal `${`. Problems are reported under `field`.
pub fn interpolate(value: &mut toml::Value, field: &str, env: &dyn Env, problems: &mut Problems) {
    match value {
        toml::Value::String(s) if s.contains('$') => match interpolate_str(s, env) {
            Ok(replaced) => *s = replaced,
            Err((found, expected)) => problems.push(field, found, expected),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate(item, &format!("{field}[{i}]"), env, problems);
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                let path = join_key(field, key);
                interpolate(item, &path, env, problems);
            }
        }
        _ => {}
    }
}

/// Joins a table key onto a field path, quoting keys that are not bare TOML keys
/// (`source.properties."sasl.password"`).
pub fn join_key(parent: &str, key: &str) -> String {
    let bare = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare { key.to_string() } else { format!("{key:?}") };
    if parent.is_empty() { key } else { format!("{parent}.{key}") }
}

fn interpolate_str(text: &str, env: &dyn Env) -> Result<String, (String, String)> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body.find('}').ok_or_else(|| {
                (format!("an unclosed `${{` in `{text}`"), "`${NAME}` with a closing `}`".to_string())
            })?;
            let spec = &body[..end];
            let (name, fallback) = match spec.split_once(":-") {
                Some((name, fallback)) => (name, Some(fallback)),
                None => (spec, None),
            };
            let valid_name = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid_name {
                return Err((
                    format!("`${{{spec}}}`"),
                    "an environment variable name of letters, digits and `_`".to_string(),
                ));
            }
            match (env.var(name), fallback) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(fallback)) => out.push_str(fallback),
                (None, None) => {
                    return Err((
                        format!("`${{{name}}}`, but environment variable {name} is not defined"),
                        format!("{name} to be set, or a fallback as in `${{{name}:-value}}`"),
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "USER" => Some("alice".into()),
            "QUOTED" => Some("p\"w\n".into()),
            _ => None,
        }
    }

    #[test]
    fn replaces_defined_variables_and_fallbacks() {
        assert_eq!(interpolate_str("u=${USER}", &env).unwrap(), "u=alice");
        assert_eq!(interpolate_str("${MISSING:-x}-${USER}", &env).unwrap(), "x-alice");
        assert_eq!(interpolate_str("$${USER} costs $5", &env).unwrap(), "${USER} costs $5");
        assert_eq!(interpolate_str("${QUOTED}", &env).unwrap(), "p\"w\n");
    }

    #[test]
    fn reports_undefined_and_malformed() {
        assert!(interpolate_str("${MISSING}", &env).unwrap_err().0.contains("MISSING is not defined"));
        assert!(interpolate_str("${USER", &env).is_err());
        assert!(interpolate_str("${1BAD}", &env).is_err());
    }

    #[test]
    fn walks_nested_values_with_paths() {
        let mut value: toml::Value =
            toml::from_str("[a]\nlist = ['${USER}', '${NOPE}']\n[a.props]\n'x.y' = '${NOPE}'\n").unwrap();
        let mut problems = Problems::default();
        interpolate(&mut value, "", &env, &mut problems);
        let fields: Vec<String> = problems.into_vec().into_iter().map(|p| p.field).collect();
        assert_eq!(fields, vec!["a.list[1]".to_string(), "a.props.\"x.y\"".to_string()]);
        assert_eq!(value["a"]["list"][0].as_str(), Some("alice"));
    }
}
