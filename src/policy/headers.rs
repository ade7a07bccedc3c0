//! Header allowlists (SPEC §4.4). STUB: to be implemented.

#[derive(Debug, Clone, Default)]
pub struct HeaderRules {}
