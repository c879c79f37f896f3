"""Applications over the inverse engine (src/inverse) and the domains: MRI reconstruction, ..."""
