//! Request-target parsing (SPEC §4 step 4). STUB: to be implemented.

/// A request target that passed every check: origin-form path plus optional query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTarget<'a> {
    pub path: &'a str,
    /// Query without the leading `?`; `None` when the target has no `?`.
    pub query: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("request target is not origin-form")]
    NotOriginForm,
}

impl<'a> RequestTarget<'a> {
    pub fn parse(raw: &'a str) -> Result<Self, TargetError> {
        let _ = raw;
        Err(TargetError::NotOriginForm)
    }
}
