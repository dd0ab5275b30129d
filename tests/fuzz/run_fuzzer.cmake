# ctest driver for a bounded libFuzzer run: starts from an empty scratch
# corpus each time (libFuzzer writes new inputs into its first corpus folder)
# so runs are repeatable and the committed seeds stay untouched.
#   cmake -DFUZZER=exe -DSEEDS=dir -DDICT=file -DWORK=dir -DRUNS=n -P run_fuzzer.cmake
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK}/corpus)
execute_process(
  COMMAND ${FUZZER} -runs=${RUNS} -seed=1 -max_len=4096 -timeout=10 -rss_limit_mb=2048
          -dict=${DICT} -artifact_prefix=${WORK}/ ${WORK}/corpus ${SEEDS}
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${FUZZER} failed (exit ${rc}); the crashing input is in ${WORK}/")
endif()
