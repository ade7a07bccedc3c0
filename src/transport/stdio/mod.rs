//! The stdio transport. STUB: being implemented.

use crate::cli::{GatewayArgs, RelayArgs};

use super::TransportError;

pub fn gateway(_args: GatewayArgs) -> Result<(), TransportError> {
    Err(TransportError::Fatal(
        "the stdio gateway is not implemented yet".into(),
    ))
}

pub fn relay(_args: RelayArgs) -> Result<(), TransportError> {
    Err(TransportError::Fatal(
        "the stdio relay is not implemented yet".into(),
    ))
}
