"""Settings, the ground floor: one pydantic-settings class per component, built once per
process at its entry point and handed down."""
