//! Reading one JSON object's fields with errors that name the path, e.g.
//! `actions[1].seconds: must be 1..=86400`. Shared by the alert envelope and
//! every action's parameter validation.

use serde_json::{Map, Value};

use crate::error::{AgentError, ErrorName};

pub struct Fields<'a> {
    pub path: String,
    pub map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// `value` must be an object; `path` names it (empty for the root).
    pub fn of(path: &str, value: &'a Value) -> Result<Fields<'a>, AgentError> {
        match value {
            Value::Object(map) => Ok(Fields {
                path: path.to_string(),
                map,
            }),
            other => Err(AgentError::invalid(
                if path.is_empty() { "alert" } else { path },
                format!("must be a JSON object, not {}", type_name(other)),
            )),
        }
    }

    /// The path of one field of this object.
    pub fn field_path(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    pub fn error(&self, name: &str, what: impl std::fmt::Display) -> AgentError {
        AgentError::invalid(&self.field_path(name), what)
    }

    pub fn error_named(
        &self,
        error: ErrorName,
        name: &str,
        what: impl std::fmt::Display,
    ) -> AgentError {
        AgentError::at(error, &self.field_path(name), what)
    }

    /// Refuses any key not in `allowed` (sorted by name in the message).
    pub fn deny_unknown(&self, allowed: &[&str]) -> Result<(), AgentError> {
        let mut unknown: Vec<&String> = self
            .map
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .collect();
        unknown.sort();
        match unknown.first() {
            None => Ok(()),
            Some(key) => Err(self.error(
                key,
                format!("unknown field (expected one of: {})", allowed.join(", ")),
            )),
        }
    }

    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name)
    }

    pub fn required(&self, name: &str) -> Result<&'a Value, AgentError> {
        self.map
            .get(name)
            .ok_or_else(|| self.error(name, "is required"))
    }

    pub fn string(&self, name: &str) -> Result<&'a str, AgentError> {
        match self.required(name)? {
            Value::String(s) => Ok(s),
            other => Err(self.error(name, format!("must be a string, not {}", type_name(other)))),
        }
    }

    pub fn opt_string(&self, name: &str) -> Result<Option<&'a str>, AgentError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(_) => self.string(name).map(Some),
        }
    }

    /// A string of `1..=max_bytes` bytes that is not only white space and has no NUL.
    pub fn text(&self, name: &str, max_bytes: usize) -> Result<&'a str, AgentError> {
        let s = self.string(name)?;
        check_text(s, max_bytes).map_err(|what| self.error(name, what))?;
        Ok(s)
    }

    pub fn integer(&self, name: &str, min: u64, max: u64) -> Result<u64, AgentError> {
        let value = self.required(name)?;
        match value.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ if value.is_number() => Err(self.error(name, format!("must be {min}..={max}"))),
            _ => Err(self.error(
                name,
                format!("must be an integer {min}..={max}, not {}", type_name(value)),
            )),
        }
    }

    pub fn opt_integer(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, AgentError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(_) => self.integer(name, min, max).map(Some),
        }
    }
}

pub fn check_text(s: &str, max_bytes: usize) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > max_bytes {
        return Err(format!(
            "is {} bytes; at most {max_bytes} are allowed",
            s.len()
        ));
    }
    if s.contains('\0') {
        return Err("must not contain NUL characters".into());
    }
    Ok(())
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
