//! Templates over a webhook's JSON payload: literal text with `{path.to.field}`
//! placeholders (`{issue.number}`, `{labels.0.name}`), alternatives with `|`
//! (`{issue.number|pull_request.number}`: the first that is present), and `{{` / `}}`
//! for literal braces. Parsed (so checked) when the configuration is loaded.

use std::fmt;

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    /// Alternatives, each a dotted path.
    Field(Vec<Vec<String>>),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn path_ok(p: &str) -> bool {
    !p.is_empty()
        && p.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

impl Template {
    pub fn parse(source: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut inner = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        inner.push(c);
                    }
                    if !closed {
                        return Err(format!("`{source}`: `{{` without a closing `}}`"));
                    }
                    let alts: Vec<&str> = inner.split('|').map(str::trim).collect();
                    if let Some(bad) = alts.iter().find(|p| !path_ok(p)) {
                        return Err(format!(
                            "`{source}`: `{bad}` is not a field path (like issue.number or labels.0.name)"
                        ));
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Field(
                        alts.iter()
                            .map(|p| p.split('.').map(String::from).collect())
                            .collect(),
                    ));
                }
                '}' => {
                    return Err(format!(
                        "`{source}`: `}}` without an opening `{{` (write `}}}}` for a brace)"
                    ))
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Self {
            source: source.to_string(),
            parts,
        })
    }

    /// Fills the placeholders from `payload`; a missing field is an error naming it.
    pub fn render(&self, payload: &Value) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(alts) => {
                    let v = alts
                        .iter()
                        .find_map(|p| lookup(payload, p))
                        .ok_or_else(|| {
                            let names: Vec<String> = alts.iter().map(|p| p.join(".")).collect();
                            format!("the payload has no `{}`", names.join("` or `"))
                        })?;
                    match v {
                        Value::String(s) => out.push_str(s),
                        Value::Number(_) | Value::Bool(_) => out.push_str(&v.to_string()),
                        other => out.push_str(&other.to_string()),
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The value at a dotted path (array elements by index), `None` if absent or null.
pub fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut at = v;
    for seg in path {
        at = match at {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    (!at.is_null()).then_some(at)
}

/// The value at a dotted path given as text.
pub fn lookup_str<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let segs: Vec<String> = path.split('.').map(String::from).collect();
    lookup(v, &segs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Fields, alternatives, numbers, literal braces; a missing field names itself.
    #[test]
    fn render_fields() {
        let p = json!({"issue": {"number": 42, "title": "Fix it", "labels": [{"name": "agent"}]},
                       "repository": {"full_name": "acme/api"}});
        let t =
            Template::parse("{repository.full_name}#{issue.number|pull_request.number}").unwrap();
        assert_eq!(t.render(&p).unwrap(), "acme/api#42");
        let t = Template::parse("{{literal}} {issue.labels.0.name}").unwrap();
        assert_eq!(t.render(&p).unwrap(), "{literal} agent");
        let t = Template::parse("{pull_request.head.sha}").unwrap();
        assert_eq!(
            t.render(&p).unwrap_err(),
            "the payload has no `pull_request.head.sha`"
        );
        assert_eq!(
            Template::parse("plain").unwrap().render(&p).unwrap(),
            "plain"
        );
    }

    /// Malformed templates are refused when parsed.
    #[test]
    fn parse_errors() {
        for bad in ["{issue.number", "x}", "{}", "{a..b}", "{a b}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
