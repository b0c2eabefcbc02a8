//! `org.vael.Antibody.Error.*`: the named errors of DESIGN.md §1.

use crate::error::{AgentError, ErrorName};

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.vael.Antibody.Error")]
pub enum Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    InvalidAlert(String),
    UnknownAction(String),
    NotFound(String),
    AccessDenied(String),
    ProtectedTarget(String),
    QueueFull(String),
    RateLimited(String),
    StorageFailure(String),
    PlanNotFinished(String),
    /// `RollbackPlan` of a finished plan with nothing in force to revert.
    NothingToRevert(String),
    /// A method argument other than an alert is malformed (e.g. a status filter).
    InvalidArgument(String),
}

impl From<AgentError> for Error {
    fn from(e: AgentError) -> Error {
        let m = e.message;
        match e.name {
            ErrorName::InvalidAlert => Error::InvalidAlert(m),
            ErrorName::UnknownAction => Error::UnknownAction(m),
            ErrorName::NotFound => Error::NotFound(m),
            ErrorName::AccessDenied => Error::AccessDenied(m),
            ErrorName::ProtectedTarget => Error::ProtectedTarget(m),
            ErrorName::QueueFull => Error::QueueFull(m),
            ErrorName::RateLimited => Error::RateLimited(m),
            ErrorName::StorageFailure => Error::StorageFailure(m),
            ErrorName::PlanNotFinished => Error::PlanNotFinished(m),
            ErrorName::NothingToRevert => Error::NothingToRevert(m),
        }
    }
}
