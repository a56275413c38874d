"""Services: users, memories, profiles, conversations, onboarding and retrieval; plain async Python, no LiveKit."""
