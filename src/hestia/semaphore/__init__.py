"""Ansible Semaphore: the API client, template lookup and task records."""
