//! Pictures people look at rather than read: training curves ([`plot`], drawn with `plotters`,
//! as PNG and SVG) and contact sheets of augmented samples ([`contact_sheet`]), every PNG written
//! through one writer ([`png`]).

pub mod contact_sheet;
pub mod plot;
pub mod png;
