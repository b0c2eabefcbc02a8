//! The agent's named errors. Every refusal the agent gives carries one of these
//! names (mapped 1:1 to `org.vael.Antibody.Error.*` on the bus) and a message
//! that says what was wrong and where.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorName {
    InvalidAlert,
    UnknownAction,
    NotFound,
    AccessDenied,
    ProtectedTarget,
    QueueFull,
    RateLimited,
    StorageFailure,
    /// `RollbackPlan` on a plan that is still pending or running.
    PlanNotFinished,
    /// `RollbackPlan` on a finished plan with nothing applied and
    /// reversible (all failed, skipped, not reversible, or reverted).
    NothingToRevert,
}

impl ErrorName {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorName::InvalidAlert => "InvalidAlert",
            ErrorName::UnknownAction => "UnknownAction",
            ErrorName::NotFound => "NotFound",
            ErrorName::AccessDenied => "AccessDenied",
            ErrorName::ProtectedTarget => "ProtectedTarget",
            ErrorName::QueueFull => "QueueFull",
            ErrorName::RateLimited => "RateLimited",
            ErrorName::StorageFailure => "StorageFailure",
            ErrorName::PlanNotFinished => "PlanNotFinished",
            ErrorName::NothingToRevert => "NothingToRevert",
        }
    }

    /// The full D-Bus error name.
    pub fn dbus_name(self) -> String {
        format!("org.vael.Antibody.Error.{}", self.as_str())
    }
}

/// A refusal: which named error, and a message naming the field when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentError {
    pub name: ErrorName,
    pub message: String,
}

impl AgentError {
    pub fn new(name: ErrorName, message: impl Into<String>) -> Self {
        AgentError {
            name,
            message: message.into(),
        }
    }

    /// An error about one field of the input: the message reads `path: what`.
    pub fn at(name: ErrorName, path: &str, what: impl fmt::Display) -> Self {
        if path.is_empty() {
            AgentError::new(name, what.to_string())
        } else {
            AgentError::new(name, format!("{path}: {what}"))
        }
    }

    pub fn invalid(path: &str, what: impl fmt::Display) -> Self {
        AgentError::at(ErrorName::InvalidAlert, path, what)
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name.as_str(), self.message)
    }
}

impl std::error::Error for AgentError {}
