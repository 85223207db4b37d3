"""What `psystats report` needs to render its PDF."""
