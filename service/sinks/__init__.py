"""Where the daemon's results go besides the database: dead letters and outcome records.

``base`` defines what a sink is (one async batch method, one transient error);
``kafka`` writes to the dead-letter and outcomes topics; ``memory`` keeps everything in
lists, for tests and for anyone embedding the service.
"""
