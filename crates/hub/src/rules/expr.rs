//! CEL at runtime: the shared environment, evaluation, and how errors are classified
//! (a missing field is not an error, see [`EvalError::Missing`]).

use std::sync::{Arc, LazyLock};

use cel::{Context, Env, ExecutionError, ParseErrors, Program, Value};

use super::context::type_name;

/// The CEL standard environment, built once for the process.
pub(super) fn cel_env() -> &'static Arc<Env> {
    static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));
    &ENV
}

/// Why an expression produced no usable value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum EvalError {
    /// It read a field the message does not have (`msg.light` on `{"battery": 3}`, or on
    /// a payload that is not JSON). The rule does not apply to this message.
    Missing(String),
    /// Any other failure: a type mismatch, division by zero, an unknown variable, a
    /// condition that is not a bool.
    Failed(String),
}

impl EvalError {
    /// The message of either kind.
    pub(super) fn into_message(self) -> String {
        match self {
            Self::Missing(m) | Self::Failed(m) => m,
        }
    }
}

/// Evaluates an expression.
pub(super) fn eval(program: &Program, cx: &Context<'_, '_>) -> Result<Value, EvalError> {
    program.execute(cx).map_err(|e| match &e {
        ExecutionError::NoSuchKey(key) => EvalError::Missing(format!("no such field: {key}")),
        // `msg.light` when `msg` is null (the payload was not JSON, or `{"msg": null}`).
        ExecutionError::NoSuchOverload(o)
            if o.function() == "_._" && o.argument_types().first().is_some_and(|t| t == "null_type") =>
        {
            EvalError::Missing("field of null".to_owned())
        }
        _ => EvalError::Failed(e.to_string()),
    })
}

/// Evaluates a condition, which must return a bool.
pub(super) fn eval_bool(program: &Program, cx: &Context<'_, '_>) -> Result<bool, EvalError> {
    match eval(program, cx)? {
        Value::Bool(b) => Ok(b),
        other => {
            Err(EvalError::Failed(format!("expected a bool, the expression returned {}", type_name(&other))))
        }
    }
}

/// The first parse error as (line, column, message), both 1-based.
pub(super) fn parse_error_position(e: &ParseErrors) -> (usize, usize, String) {
    match e.errors.first() {
        Some(first) => {
            let line = usize::try_from(first.pos.0).unwrap_or(1).max(1);
            let column = usize::try_from(first.pos.1).unwrap_or(1).max(1);
            (line, column, first.msg.clone())
        }
        None => (1, 1, e.to_string()),
    }
}

/// The first parse error as (byte offset into `source`, message).
pub(super) fn parse_error_offset(source: &str, e: &ParseErrors) -> (usize, String) {
    let (line, column, message) = parse_error_position(e);
    let line_start: usize = source.split_inclusive('\n').take(line - 1).map(str::len).sum();
    let offset =
        source[line_start..].char_indices().nth(column - 1).map_or(source.len(), |(i, _)| line_start + i);
    (offset, message)
}
