"""persistjob: persistent jobs on batch and grid schedulers.

The scheduler keeps the job; the storage keeps the state; the wrapper joins
the two.  Importing this package has no side effects.
"""

__version__ = "0.1.0"
