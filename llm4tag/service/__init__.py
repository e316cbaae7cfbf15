"""The HTTP service's logic, free of Ray and of any web framework (the Ray Serve deployments in
``deployments/`` answer HTTP with it): request and answer models (``http_schema``), settings
(``settings``), API keys (``auth``), deadline admission (``admission``), the vocabulary search
(``tag_search``), the review queue (``review_queue``) and Annif's API (``annif``)."""
