DROP TABLE quarantined_messages;
