//! Templates in actions: `${ <CEL> }` inside strings, `{device}` in topics, and JSON
//! templates (any JSON value whose strings are templates). Compiled once with the rule.
//!
//! * A string that is exactly one `${…}` renders as the typed value (number, bool, map,
//!   list, null); any other string renders as text with each `${…}` replaced by its value
//!   (strings as they are, lists and maps as JSON).
//! * `$${` writes a literal `${`.
//! * In topic templates, `{device}` is the message's device id.

use cel::{Context, Program};

use super::context::{value_to_json, value_to_text};
use super::expr::{self, EvalError, cel_env};

/// Where and why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TemplateError {
    /// Byte offset in the template string.
    pub(super) offset: usize,
    pub(super) message: String,
}

/// A compiled string template.
#[derive(Debug)]
pub(super) struct StrTemplate {
    parts: Vec<Part>,
}

#[derive(Debug)]
enum Part {
    Text(String),
    Expr(Program),
    Device,
}

impl StrTemplate {
    /// Compiles `text`; `{device}` is a placeholder only when `with_device` is true.
    pub(super) fn parse(text: &str, with_device: bool) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            if rest.starts_with("$${") {
                lit.push_str("${");
                i += 3;
            } else if rest.starts_with("${") {
                let start = i + 2;
                let end = start
                    + closing_brace(&text[start..]).ok_or_else(|| TemplateError {
                        offset: i,
                        message: "unterminated `${`: expected `}`".to_owned(),
                    })?;
                let source = &text[start..end];
                if source.trim().is_empty() {
                    return Err(TemplateError { offset: i, message: "empty `${}`".to_owned() });
                }
                let program = cel_env().compile(source).map_err(|e| {
                    let (offset, message) = expr::parse_error_offset(source, &e);
                    TemplateError { offset: start + offset, message }
                })?;
                if !lit.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut lit)));
                }
                parts.push(Part::Expr(program));
                i = end + 1;
            } else if with_device && rest.starts_with("{device}") {
                if !lit.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut lit)));
                }
                parts.push(Part::Device);
                i += "{device}".len();
            } else {
                let c = rest.chars().next().unwrap_or_default();
                lit.push(c);
                i += c.len_utf8();
            }
        }
        if !lit.is_empty() || parts.is_empty() {
            parts.push(Part::Text(lit));
        }
        Ok(Self { parts })
    }

    /// True when rendering needs no message (no `${…}`, no `{device}`).
    pub(super) fn literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// Renders as text.
    pub(super) fn render_text(&self, cx: &Context<'_, '_>, device: Option<&str>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Device => {
                    out.push_str(device.ok_or("`{device}` in a template, but the message has no device")?)
                }
                Part::Expr(p) => {
                    out.push_str(&value_to_text(&expr::eval(p, cx).map_err(EvalError::into_message)?)?)
                }
            }
        }
        Ok(out)
    }

    /// Renders as JSON: the typed value for a lone `${…}`, else a string.
    pub(super) fn render_json(
        &self,
        cx: &Context<'_, '_>,
        device: Option<&str>,
    ) -> Result<serde_json::Value, String> {
        match self.parts.as_slice() {
            [Part::Expr(p)] => value_to_json(&expr::eval(p, cx).map_err(EvalError::into_message)?),
            _ => self.render_text(cx, device).map(serde_json::Value::String),
        }
    }
}

/// The end of a `${…}` expression: the byte offset of the `}` that closes it, skipping
/// braces inside CEL map literals and quoted strings.
fn closing_brace(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// A compiled JSON template.
#[derive(Debug)]
pub(super) enum JsonTemplate {
    /// No template inside: rendered by cloning.
    Fixed(serde_json::Value),
    Str(StrTemplate),
    Array(Vec<JsonTemplate>),
    Object(Vec<(String, JsonTemplate)>),
}

/// A template error with the JSON path where it happened (`payload.led_on`).
#[derive(Debug)]
pub(super) struct JsonTemplateError {
    pub(super) path: String,
    pub(super) error: TemplateError,
}

impl JsonTemplate {
    /// Compiles every string of `value` as a template; `path` names `value` in errors.
    pub(super) fn parse(value: &serde_json::Value, path: &str) -> Result<Self, JsonTemplateError> {
        use serde_json::Value as J;
        let t = match value {
            J::String(s) => {
                let t = StrTemplate::parse(s, false)
                    .map_err(|error| JsonTemplateError { path: path.to_owned(), error })?;
                match t.literal() {
                    Some(lit) => Self::Fixed(J::String(lit.to_owned())),
                    None => Self::Str(t),
                }
            }
            J::Array(items) => {
                let items = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Self::parse(v, &format!("{path}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                if items.iter().all(|t| matches!(t, Self::Fixed(_))) {
                    Self::Fixed(value.clone())
                } else {
                    Self::Array(items)
                }
            }
            J::Object(map) => {
                let entries = map
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), Self::parse(v, &format!("{path}.{k}"))?)))
                    .collect::<Result<Vec<_>, _>>()?;
                if entries.iter().all(|(_, t)| matches!(t, Self::Fixed(_))) {
                    Self::Fixed(value.clone())
                } else {
                    Self::Object(entries)
                }
            }
            other => Self::Fixed(other.clone()),
        };
        Ok(t)
    }

    /// Renders the template for one message.
    pub(super) fn render(
        &self,
        cx: &Context<'_, '_>,
        device: Option<&str>,
    ) -> Result<serde_json::Value, String> {
        Ok(match self {
            Self::Fixed(v) => v.clone(),
            Self::Str(t) => t.render_json(cx, device)?,
            Self::Array(items) => serde_json::Value::Array(
                items.iter().map(|t| t.render(cx, device)).collect::<Result<_, _>>()?,
            ),
            Self::Object(entries) => {
                let mut out = serde_json::Map::with_capacity(entries.len());
                for (k, t) in entries {
                    out.insert(k.clone(), t.render(cx, device)?);
                }
                serde_json::Value::Object(out)
            }
        })
    }
}
