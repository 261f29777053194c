"""gloomd: a job distribution daemon speaking the Gloom protocol, on trio."""
