//! The OpenAI chat completions surface: requests, upstream responses, replies, errors, SSE.

pub mod completion;
pub mod error;
pub mod json_text;
pub mod models;
mod object_key;
pub mod request;
pub mod sse;
pub mod stream_rewrite;
pub mod upstream;
pub mod usage;

pub use completion::FinalCompletion;
pub use error::ApiError;
pub use request::{ChatRequest, Edit};
pub use stream_rewrite::StreamRewriter;
pub use upstream::{parse_completion, InvalidResponse, UpstreamCompletion};
pub use usage::Usage;
