"""auth-api: anonymous sign-in through AWS Cognito, returning an ID token."""
