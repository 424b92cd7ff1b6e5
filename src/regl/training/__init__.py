"""The classifiers and the one SGD loop that centralized, federated and personalized training share."""
