//! moat-supervisor: runs images from the store as sandboxes (filled by the supervisor issue).
