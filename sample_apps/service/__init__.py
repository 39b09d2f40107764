"""An HTTP classification service on the standard library:
`python -m sample_apps.service.serve BUNDLE --port 8080`."""
