"""The presence service: accounts, presence, web chat and the lookup API."""
