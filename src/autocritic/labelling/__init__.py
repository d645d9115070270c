"""Self-labelling on your own problems (Cobbe et al. 2021): sample K answers per problem from your model, label
each by checking it, and write pointwise critic data the trainer reads.

Nothing here knows the offline world (`autocritic.offline`, which builds its own critic data the same way): the
problems, the model and the checker are yours.
"""
