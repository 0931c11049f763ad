//! Pictures people look at rather than read: training curves ([`plot`]) and contact sheets of
//! augmented samples ([`contact_sheet`]), written as PNG through one writer ([`png`]).

pub mod contact_sheet;
pub mod plot;
